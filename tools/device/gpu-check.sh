#!/usr/bin/env bash
# GPU checks for pixart-rs, run ON the GPU machine from the repository root (issue 8).
# Expects, carried from the build machine (see docs/cuda.md):
#   .cuda-bin/{pixart,cuda_smoke,cuda_kernels_check}.xz   the CUDA build (tools/cuda/build.sh), xz-compressed
#   .whl/                                          diffusers 0.42.1 + importlib_metadata wheels
# Writes logs and outputs under $OUT and prints a summary table last.
# Stages (all by default): smoke kernels golden generate bench. E.g. `tools/device/gpu-check.sh golden bench`.
# The project's CUDA kernels (fused attention, norm + modulation, gated residual) are on by
# default; PIXART_CUDA_KERNELS=candle selects candle's composed ops, which the golden (bf16) and
# 1024 px bench stages also run, for comparison.
set -uo pipefail
OUT="${OUT:-/tmp/pixart-gpu}"
mkdir -p "$OUT"
stages="${*:-smoke kernels golden generate bench}"
summary="$OUT/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }
has() { [[ " $stages " == *" $1 "* ]]; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
# CUDA 13 user-space libraries: the system toolkit if any, plus PyTorch's nvidia wheels.
libdirs=$(python3 - <<'PY'
import os, glob
dirs = set()
try:
    import nvidia
    for base in nvidia.__path__:
        for lib in glob.glob(os.path.join(base, "**", "lib*.so*"), recursive=True):
            dirs.add(os.path.dirname(lib))
except Exception:
    pass
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="${libdirs}:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
mkdir -p /tmp/pixart-bin
for b in pixart cuda_smoke cuda_kernels_check; do
  [ -f ".cuda-bin/$b.xz" ] && xz -dc ".cuda-bin/$b.xz" > "/tmp/pixart-bin/$b" && chmod +x "/tmp/pixart-bin/$b"
done
PIX=/tmp/pixart-bin/pixart
ldd "$PIX" > "$OUT/ldd.txt" 2>&1; grep -E "not found" "$OUT/ldd.txt" && note "MISSING LIBRARIES (see ldd.txt)"

if has smoke && [ -x /tmp/pixart-bin/cuda_smoke ]; then
  echo "== smoke"
  timeout 120 /tmp/pixart-bin/cuda_smoke > "$OUT/smoke.txt" 2>&1; note "cuda_smoke rc=$? ($(tail -n 1 "$OUT/smoke.txt"))"
fi

if has kernels && [ -x /tmp/pixart-bin/cuda_kernels_check ]; then
  echo "== the project's CUDA kernels vs candle's composed ops"
  timeout 180 /tmp/pixart-bin/cuda_kernels_check > "$OUT/kernels.txt" 2>&1
  note "cuda_kernels_check rc=$? ($(tail -n 1 "$OUT/kernels.txt"))"
  grep -E "FAIL|^\{" "$OUT/kernels.txt" >> "$summary"
fi

if has golden; then
  echo "== golden transformer cases on CUDA"
  # "bf16-candle": the same bf16 cases with the project's kernels switched off.
  for dt in f32 bf16 bf16-candle; do
    mkdir -p "$OUT/golden-$dt"
    for d in fixtures/golden/transformer/*/; do
      case=$(basename "$d")
      PIXART_CUDA_KERNELS=$([ "$dt" = bf16-candle ] && echo candle || echo pixart) \
      timeout 120 "$PIX" run transformer --device cuda --dtype "${dt%-candle}" --model "$d" \
        --inputs "$d/io.safetensors" --out "$OUT/golden-$dt/$case.safetensors" >> "$OUT/golden-$dt.log" 2>&1 \
        || echo "$case failed" >> "$OUT/golden-$dt.log"
    done
    python3 tools/device/compare_golden.py "$OUT/golden-$dt" "${dt%-candle}" > "$OUT/golden-$dt.txt" 2>&1
    note "golden $dt: $(tail -n 1 "$OUT/golden-$dt.txt")"
  done
  timeout 120 "$PIX" run text-encoder --device cuda --model fixtures/golden/text/text_encoder \
    --inputs fixtures/golden/text/io.safetensors --out "$OUT/t5.safetensors" > "$OUT/t5.log" 2>&1
  python3 - "$OUT/t5.safetensors" >> "$summary" 2>&1 <<'PY'
import sys
from safetensors.torch import load_file
g = load_file(sys.argv[1])["last_hidden_state"].double()
w = load_file("fixtures/golden/text/io.safetensors")["last_hidden_state"].double()
print(f"golden t5 f32 on CUDA: max|diff| {(g - w).abs().max().item():.3e} (tolerance 1e-5)")
PY
fi

if has generate; then
  echo "== pixart generate --device cuda"
  # The built-in model (models/builtin): the same binary on the CPU and the GPU, final latents
  # compared (f32: the same arithmetic up to reduction order; bf16 on the GPU against f32 on the CPU).
  gen() { timeout 180 "$PIX" generate -p "a small red circle on a blue background" --seed 3 --steps 10 "$@"; }
  gen --device cpu --output-type latent -o "$OUT/gen-builtin-cpu-f32.safetensors" > "$OUT/gen-builtin.log" 2>&1
  for dt in f32 bf16; do
    gen --device cuda --dtype $dt --output-type latent -o "$OUT/gen-builtin-cuda-$dt.safetensors" >> "$OUT/gen-builtin.log" 2>&1
  done
  # The PNG run also writes live previews (x0 decoded on the device every 2 steps).
  gen --device cuda -o "$OUT/gen-builtin-cuda.png" --preview "$OUT/gen-builtin-cuda-preview.png" --preview-every 2 \
    >> "$OUT/gen-builtin.log" 2>&1 || echo "PNG run failed" >> "$OUT/gen-builtin.log"
  # Image to image and inpainting (VAE encode, add_noise, mask blending on the device), f32.
  init=fixtures/golden/pipeline/img2img_init.png
  for mode in img2img inpaint; do
    extra=(--image "$init" --strength 0.6)
    [ "$mode" = inpaint ] && extra+=(--mask fixtures/golden/pipeline/img2img_mask.png)
    for dev in cpu cuda; do
      gen --device $dev "${extra[@]}" --output-type latent -o "$OUT/gen-builtin-$mode-$dev.safetensors" >> "$OUT/gen-builtin.log" 2>&1
    done
  done
  python3 - "$OUT" >> "$summary" 2>&1 <<'PY'
import os, sys
from safetensors.torch import load_file
out = sys.argv[1]
def lat(name):
    p = os.path.join(out, f"gen-builtin-{name}.safetensors")
    return load_file(p)["latents"].double() if os.path.exists(p) else None
ref = lat("cpu-f32")
for dt, tol in (("f32", 1e-3), ("bf16", 5e-2)):
    got = lat(f"cuda-{dt}")
    if ref is None or got is None:
        print(f"generate builtin cuda {dt}: MISSING output (see gen-builtin.log)")
        continue
    rel = ((got - ref).norm() / ref.norm()).item()
    print(f"generate builtin cuda {dt} vs cpu f32: rel L2 {rel:.3e} {'ok' if rel <= tol else 'FAIL'} (tolerance {tol:.0e})")
for mode in ("img2img", "inpaint"):
    ref, got = lat(f"{mode}-cpu"), lat(f"{mode}-cuda")
    if ref is None or got is None:
        print(f"generate builtin {mode} cuda f32: MISSING output (see gen-builtin.log)")
        continue
    rel = ((got - ref).norm() / ref.norm()).item()
    print(f"generate builtin {mode} cuda f32 vs cpu f32: rel L2 {rel:.3e} {'ok' if rel <= 1e-3 else 'FAIL'} (tolerance 1e-03)")
PY
  note "generate builtin PNG: $(ls "$OUT/gen-builtin-cuda.png" 2>/dev/null || echo missing); previews: $(grep -c 'preview after step' "$OUT/gen-builtin.log") ($(ls "$OUT/gen-builtin-cuda-preview.png" 2>/dev/null || echo missing))"
  # Full size at 1024 px: XL/2 transformer, SDXL VAE, XXL-width T5 (2 layers), random weights.
  if tools/device/make-random-pipeline.sh "$PIX" /tmp/sigma-random bf16 > "$OUT/random-pipeline.log" 2>&1; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$OUT/gen-mem.txt" 2>/dev/null &
    smi=$!
    timeout 300 "$PIX" generate --model /tmp/sigma-random -p "a test of the full-size pipeline" --seed 1 \
      --width 1024 --height 1024 --dtype bf16 --steps 20 --device cuda -o "$OUT/gen-1024.png" > "$OUT/gen-1024.log" 2>&1
    rc=$?
    kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
    note "generate 1024 px bf16 20 steps (random full-size pipeline) rc=$rc: $(tail -n 1 "$OUT/gen-1024.log"); GPU peak $(sort -n "$OUT/gen-mem.txt" | tail -n 1) MiB"
  else
    note "make-random-pipeline failed (see random-pipeline.log)"
  fi
fi

if has bench; then
  echo "== benchmarks (bf16, batch 2, 300 tokens): Rust vs diffusers, alternating"
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > "$OUT/pip.log" 2>&1
  export PYTHONPATH=/tmp/site
  # GPU memory of the Rust runs: nvidia-smi sampled every 100 ms (candle has no allocator stats).
  run_rust() {
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$OUT/mem.txt" 2>/dev/null &
    local smi=$!
    local line
    line=$(timeout "$1" "$PIX" bench transformer --device cuda --dtype bf16 --size "$2" --warmup "$3" --iters "$4" ${5:+--kv-compress $5} 2>>"$OUT/bench.err" | tail -n 1)
    kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
    local mib
    mib=$(sort -n "$OUT/mem.txt" | tail -n 1)
    [ -n "$line" ] && python3 -c "import json,sys; r=json.loads(sys.argv[1]); r['gpu_peak_bytes']=int(sys.argv[2] or 0)*2**20; r['kernels']=sys.argv[3]; print(json.dumps(r))" "$line" "${mib:-0}" "${PIXART_CUDA_KERNELS:-pixart}"
  }
  run_torch() { timeout "$1" python3 tools/bench/transformer.py --device cuda --dtype bf16 --size "$2" --warmup "$3" --iters "$4" 2>>"$OUT/bench.err" | tail -n 1; }
  {
    run_torch 90 1024 3 10; run_rust 90 1024 3 10
    PIXART_CUDA_KERNELS=candle run_rust 90 1024 3 10
    run_torch 90 2048 2 4;  run_rust 100 2048 1 3
    run_rust 100 2048 1 3 conv:2:14-27
    run_rust 150 4096 1 1;  run_rust 150 4096 1 1 conv:2:14-27
    run_torch 100 4096 1 2
  } | tee -a "$OUT/bench.jsonl"
  echo "== 20-step 1024 px denoising loop, bf16: Rust vs diffusers"
  timeout 150 "$PIX" bench denoise --device cuda --dtype bf16 --size 1024 --steps 20 2>>"$OUT/bench.err" | tail -n 1 > "$OUT/denoise.jsonl"
  timeout 150 python3 tools/bench/denoise.py --device cuda --dtype bf16 --size 1024 --steps 20 2>>"$OUT/bench.err" | tail -n 1 >> "$OUT/denoise.jsonl"
  python3 - "$OUT/denoise.jsonl" >> "$summary" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    if l.strip().startswith("{"):
        r = json.loads(l)
        impl = "diffusers" if r["bench"].endswith("pytorch") else "pixart-rs"
        print(f"denoise 1024 px bf16 20 steps {impl:10} total {r['seconds']:.3f} s, {r.get('seconds_per_step', 0):.4f} s/step")
PY
  echo "== stage profile of the 1024 px bf16 forward (kernels on, then off)"
  for k in pixart candle; do
    PIXART_CUDA_KERNELS=$k timeout 90 "$PIX" bench transformer --device cuda --dtype bf16 --size 1024 \
      --warmup 2 --iters 5 --profile > "$OUT/profile-1024-$k.jsonl" 2> "$OUT/profile-1024-$k.txt"
  done
  python3 - "$OUT/bench.jsonl" >> "$summary" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
print(f"{'impl':28} {'size':>5} {'kv':>14} {'s/forward':>10} {'GPU peak GiB':>13} {'host RSS GiB':>13}")
for r in rows:
    impl = "diffusers (SDPA)" if r["bench"].endswith("pytorch") else f"pixart-rs ({r.get('kernels', '?')})"
    print(f"{impl:28} {r['size']:>5} {str(r.get('kv_compress')):>14} {r['seconds_per_forward']:>10.4f} "
          f"{r.get('gpu_peak_bytes', 0)/2**30:>13.2f} {r['peak_rss_bytes']/2**30:>13.2f}")
PY
fi
for k in pixart candle; do
  [ -s "$OUT/profile-1024-$k.txt" ] && { echo "-- stage profile, 1024 px bf16, kernels=$k"; cat "$OUT/profile-1024-$k.txt"; } >> "$summary"
done
echo "================ summary"
cat "$summary"
