#!/usr/bin/env bash
# GPU checks for pixart-rs, run ON the GPU machine from the repository root (issue 8).
# Expects, carried from the build machine (see docs/cuda.md):
#   .cuda-bin/{pixart,cuda_smoke,cuda_kernels_check}.xz   the CUDA build (tools/cuda/build.sh), xz-compressed
#   .whl/                                          diffusers 0.42.1 + importlib_metadata wheels
# Writes logs and outputs under $OUT and prints a summary table last.
# Stages (all by default, in this order): smoke kernels golden bench generate; named stages run in
# the order given, e.g. `tools/device/gpu-check.sh kernels bench golden`. If the kernels stage fails,
# the later stages run on candle's ops (PIXART_CUDA_KERNELS=candle) and the bench skips 4096 px.
# The project's CUDA kernels (fused attention, norm + modulation, gated residual) are on by
# default; PIXART_CUDA_KERNELS=candle selects candle's composed ops, which the golden (bf16) and
# 1024 px bench stages also run, for comparison. PIXART_FA_ROWS=16|32 and PIXART_FA_PIPELINE=0|1
# pick the attention kernel's variant (query rows per warp, cp.async prefetch of K/V); unless set,
# the later stages use the variant the kernels stage found fastest, and the 1024 px bench runs all four.
# PIXART_LT_GATED=0|1 picks how the gated residuals run (0: a separate kernel; 1: in the output
# projection's cuBLASLt GEMM, see src/cuda/linear.rs); unless set, the later stages use 1 when
# the kernels stage found it to match the composed ops. The kernels stage also times
# PyTorch's SDPA backends at the attention bench's shapes (skipped with SKIP_TORCH=1).
# Shorter bench (a device call's time is scarce): BENCH_SIZES="2048 4096" (default "1024 2048 4096"),
# ITERS_4K=1 (timed 4096 px forwards, default 2), SKIP_TORCH=1 (no diffusers runs at 2048/4096 px),
# SKIP_DENOISE=1, PROFILES="" or PROFILES=pixart (stage profiles: default with and without the kernels);
# GOLDEN_DTYPES="bf16" (the golden passes to run; default "f32 bf16 bf16-candle"), FA_VARIANTS=0 (no
# other attention variants at 1024 px), SKIP_CANDLE=1 (no candle-ops run at 1024 px).
set -uo pipefail
OUT="${OUT:-/tmp/pixart-gpu}"
mkdir -p "$OUT"
stages="${*:-smoke kernels golden bench generate}"
summary="$OUT/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }

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
# diffusers (carried as wheels in .whl/) for the PyTorch side of the benchmarks.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > "$OUT/pip.log" 2>&1
export PYTHONPATH=/tmp/site
ldd "$PIX" > "$OUT/ldd.txt" 2>&1; grep -E "not found" "$OUT/ldd.txt" && note "MISSING LIBRARIES (see ldd.txt)"

stage_smoke() {
  [ -x /tmp/pixart-bin/cuda_smoke ] || { note "cuda_smoke: binary missing"; return; }
  echo "== smoke"
  timeout 120 /tmp/pixart-bin/cuda_smoke > "$OUT/smoke.txt" 2>&1; note "cuda_smoke rc=$? ($(tail -n 1 "$OUT/smoke.txt"))"
}

stage_kernels() {
  [ -x /tmp/pixart-bin/cuda_kernels_check ] || { note "cuda_kernels_check: binary missing"; return; }
  echo "== the project's CUDA kernels vs candle's composed ops"
  timeout 120 /tmp/pixart-bin/cuda_kernels_check > "$OUT/kernels.txt" 2>&1
  local rc=$?
  note "cuda_kernels_check rc=$rc ($(tail -n 1 "$OUT/kernels.txt"))"
  if [ "$rc" != 0 ] && [ -z "${PIXART_CUDA_KERNELS:-}" ]; then
    export PIXART_CUDA_KERNELS=candle
    note "kernels check failed: the later stages run with PIXART_CUDA_KERNELS=candle"
  fi
  # The attention variant that was fastest at 2048 px runs the later stages, unless the caller chose.
  local best
  best=$(grep '"attention-best"' "$OUT/kernels.txt" | tail -n 1)
  if [ "$rc" = 0 ] && [ -n "$best" ] && [ -z "${PIXART_FA_ROWS:-}${PIXART_FA_PIPELINE:-}" ]; then
    export PIXART_FA_ROWS PIXART_FA_PIPELINE
    read -r PIXART_FA_ROWS PIXART_FA_PIPELINE < <(python3 -c "import json,sys; r=json.loads(sys.argv[1]); print(r['rows'], r['pipeline'])" "$best")
    note "attention variant for the later stages: PIXART_FA_ROWS=$PIXART_FA_ROWS PIXART_FA_PIPELINE=$PIXART_FA_PIPELINE"
  fi
  # The gated-residual fusion when it matched the composed ops (0: off), unless chosen.
  local gated
  gated=$(grep '"lt-gated-best"' "$OUT/kernels.txt" | tail -n 1)
  if [ "$rc" = 0 ] && [ -n "$gated" ] && [ -z "${PIXART_LT_GATED:-}" ]; then
    export PIXART_LT_GATED
    PIXART_LT_GATED=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['mode'])" "$gated")
    note "gated residual in the GEMM epilogue for the later stages: PIXART_LT_GATED=$PIXART_LT_GATED"
  fi
  grep -v "^all CUDA kernel checks passed" "$OUT/kernels.txt" >> "$summary"
  # PyTorch's SDPA at the attention bench's shapes, each backend alone: what diffusers' attention
  # costs on this GPU, next to the kernel's flash_ms above.
  [ "${SKIP_TORCH:-0}" = 1 ] || python3 - >> "$summary" 2>&1 <<'PY'
import json, torch
from torch.nn.attention import SDPBackend, sdpa_kernel
import torch.nn.functional as F
for n in (4096, 16384):
    q, k, v = (torch.randn(2, 16, n, 72, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    row = {"bench": "torch-sdpa", "n": n, "d": 72}
    for name, be in [("default", None), ("flash", SDPBackend.FLASH_ATTENTION),
                     ("efficient", SDPBackend.EFFICIENT_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)]:
        try:
            run = (lambda: F.scaled_dot_product_attention(q, k, v)) if be is None else None
            if be is not None:
                def run(be=be):
                    with sdpa_kernel([be]):
                        return F.scaled_dot_product_attention(q, k, v)
            run(); torch.cuda.synchronize()
            it = 20
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(it):
                run()
            e.record(); torch.cuda.synchronize()
            row[name + "_ms"] = round(s.elapsed_time(e) / it, 4)
        except Exception as err:
            row[name + "_ms"] = None
            row[name + "_error"] = str(err).splitlines()[0][:120]
    print(json.dumps(row))
PY
}

stage_golden() {
  echo "== golden transformer cases on CUDA"
  # "bf16-candle": the same bf16 cases with the project's kernels switched off.
  for dt in ${GOLDEN_DTYPES:-f32 bf16 bf16-candle}; do
    mkdir -p "$OUT/golden-$dt"
    for d in fixtures/golden/transformer/*/; do
      case=$(basename "$d")
      PIXART_CUDA_KERNELS=$([ "$dt" = bf16-candle ] && echo candle || echo "${PIXART_CUDA_KERNELS:-pixart}") \
      timeout 60 "$PIX" run transformer --device cuda --dtype "${dt%-candle}" --model "$d" \
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
}

stage_generate() {
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
# bf16: 10 steps of bf16 rounding on the small built-in model, against f32. Measured on an H100:
# 4.6e-2 (2026-11-27, first run) and 5.3e-2 (with cuBLASLt's fused epilogues); the CPU's bf16
# path gives 1.8e-2 (it keeps more in f32). A wrong kernel or layout gives O(1).
for dt, tol in (("f32", 1e-3), ("bf16", 1e-1)):
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
}

stage_bench() {
  echo "== benchmarks (bf16, batch 2, 300 tokens): Rust vs diffusers, alternating"
  # GPU memory of the Rust runs: nvidia-smi sampled every 100 ms (candle has no allocator stats).
  run_rust() {
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$OUT/mem.txt" 2>/dev/null &
    local smi=$!
    local line
    line=$(timeout "$1" "$PIX" bench transformer --device cuda --dtype bf16 --size "$2" --warmup "$3" --iters "$4" ${5:+--kv-compress $5} 2>>"$OUT/bench.err" | tail -n 1)
    kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
    local mib
    mib=$(sort -n "$OUT/mem.txt" | tail -n 1)
    [ -n "$line" ] && python3 -c "import json,sys; r=json.loads(sys.argv[1]); r['gpu_peak_bytes']=int(sys.argv[2] or 0)*2**20; r['kernels']=sys.argv[3]; r['fa_rows']=sys.argv[4]; r['fa_pipeline']=sys.argv[5]; r['lt_gated']=sys.argv[6]; print(json.dumps(r))" "$line" "${mib:-0}" "${PIXART_CUDA_KERNELS:-pixart}" "${PIXART_FA_ROWS:-default}" "${PIXART_FA_PIPELINE:-default}" "${PIXART_LT_GATED:-default}"
  }
  run_torch() { timeout "$1" python3 tools/bench/transformer.py --device cuda --dtype bf16 --size "$2" --warmup "$3" --iters "$4" 2>>"$OUT/bench.err" | tail -n 1; }
  has_size() { [[ " ${BENCH_SIZES:-1024 2048 4096} " == *" $1 "* ]]; }
  {
    if has_size 1024; then
      run_torch 90 1024 3 10; run_rust 90 1024 3 10
      # The attention kernel's other variants (query rows per warp, cp.async K/V prefetch) at
      # 1024 px (FA_VARIANTS=0 skips them), the gated residuals as separate kernels when they ran
      # in the GEMM epilogue, and candle's ops (SKIP_CANDLE=1 skips them).
      if [ "${FA_VARIANTS:-1}" = 1 ]; then
        for variant in "16 0" "32 0" "16 1" "32 1"; do
          read -r rows pipe <<< "$variant"
          [ "$rows $pipe" = "${PIXART_FA_ROWS:-32} ${PIXART_FA_PIPELINE:-1}" ] && continue
          PIXART_FA_ROWS=$rows PIXART_FA_PIPELINE=$pipe run_rust 60 1024 3 10
        done
      fi
      [ "${PIXART_LT_GATED:-1}" = 0 ] || PIXART_LT_GATED=0 run_rust 60 1024 3 10
      [ -n "${SKIP_CANDLE:-}" ] || PIXART_CUDA_KERNELS=candle run_rust 90 1024 3 10
    fi
    if has_size 2048; then
      [ -n "${SKIP_TORCH:-}" ] || run_torch 90 2048 2 4
      run_rust 100 2048 1 3
      run_rust 100 2048 1 3 conv:2:14-27
    fi
    # With candle's ops the 4096 px forwards take 54 s and 35 s (measured 2026-11-26): only with the kernels.
    if has_size 4096 && [ "${PIXART_CUDA_KERNELS:-pixart}" != candle ]; then
      run_rust 150 4096 1 "${ITERS_4K:-2}";  run_rust 150 4096 1 "${ITERS_4K:-2}" conv:2:14-27
      # diffusers at 4096 px: 3.52 s (2026-11-26) and 3.54 s (2026-11-27); SKIP_TORCH saves its ~15 s.
      [ -n "${SKIP_TORCH:-}" ] || run_torch 100 4096 1 2
    fi
  } | tee -a "$OUT/bench.jsonl"
  echo "== 20-step 1024 px denoising loop, bf16: Rust vs diffusers"
  : > "$OUT/denoise.jsonl"
  if [ -z "${SKIP_DENOISE:-}" ]; then
    timeout 150 "$PIX" bench denoise --device cuda --dtype bf16 --size 1024 --steps 20 2>>"$OUT/bench.err" | tail -n 1 > "$OUT/denoise.jsonl"
    timeout 150 python3 tools/bench/denoise.py --device cuda --dtype bf16 --size 1024 --steps 20 2>>"$OUT/bench.err" | tail -n 1 >> "$OUT/denoise.jsonl"
  fi
  python3 - "$OUT/denoise.jsonl" >> "$summary" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    if l.strip().startswith("{"):
        r = json.loads(l)
        impl = "diffusers" if r["bench"].endswith("pytorch") else "pixart-rs"
        print(f"denoise 1024 px bf16 20 steps {impl:10} total {r['seconds']:.3f} s, {r.get('seconds_per_step', 0):.4f} s/step")
PY
  echo "== stage profile of the 1024 px bf16 forward (kernels on, then off unless PROFILES=pixart)"
  for k in ${PROFILES-pixart candle}; do
    PIXART_CUDA_KERNELS=$k timeout 90 "$PIX" bench transformer --device cuda --dtype bf16 --size 1024 \
      --warmup 2 --iters 5 --profile > "$OUT/profile-1024-$k.jsonl" 2> "$OUT/profile-1024-$k.txt"
  done
  python3 - "$OUT/bench.jsonl" >> "$summary" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
print(f"{'impl':38} {'size':>5} {'kv':>14} {'s/forward':>10} {'GPU peak GiB':>13} {'host RSS GiB':>13}")
for r in rows:
    impl = "diffusers (SDPA)" if r["bench"].endswith("pytorch") else f"pixart-rs ({r.get('kernels', '?')}, fa {r.get('fa_rows', '?')}/{r.get('fa_pipeline', '?')}, gated {r.get('lt_gated', '?')})"
    print(f"{impl:38} {r['size']:>5} {str(r.get('kv_compress')):>14} {r['seconds_per_forward']:>10.4f} "
          f"{r.get('gpu_peak_bytes', 0)/2**30:>13.2f} {r['peak_rss_bytes']/2**30:>13.2f}")
PY
}
for stage in $stages; do
  case "$stage" in
    smoke | kernels | golden | bench | generate)
      echo "== stage $stage ($(date +%T))"
      t0=$SECONDS
      "stage_$stage"
      note "stage $stage: $((SECONDS - t0)) s"
      ;;
    *) note "unknown stage '$stage' (stages: smoke kernels golden bench generate)" ;;
  esac
done
for k in pixart candle; do
  [ -s "$OUT/profile-1024-$k.txt" ] && { echo "-- stage profile, 1024 px bf16, kernels=$k"; cat "$OUT/profile-1024-$k.txt"; } >> "$summary"
done
echo "================ summary"
cat "$summary"
