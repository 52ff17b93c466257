#!/usr/bin/env bash
# Check that the CUDA build compiles and links, and that the binary asks for what the GPU
# machine provides. Not run by CI (it needs the CUDA 13.0 wheels and ~30 min on 2 cores).
#   tools/cuda/check-build.sh [--tests]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
"$here/build.sh" "$@"

target="${CARGO_TARGET_DIR:-$repo/target/cuda}"
fail=0
for f in "$target/release/pixart" "$target/release/examples/cuda_smoke"; do
  echo
  echo "== checking $f"
  [[ -x "$f" ]] || { echo "FAIL: missing"; fail=1; continue; }
  needed=$(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
  for so in libcuda.so.1 libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
    grep -qx "$so" <<<"$needed" || { echo "FAIL: NEEDED $so missing"; fail=1; }
  done
  if readelf -d "$f" | grep -qE 'RPATH|RUNPATH'; then echo "FAIL: has RPATH/RUNPATH"; fail=1; fi
  # candle-kernels' PTX is embedded as text; it must target sm_90 (CUDA_COMPUTE_CAP=90).
  targets=$(grep -aoE '^\.target sm_[0-9]+a?' "$f" | sort | uniq -c || true)
  echo "PTX targets: ${targets:-none}"
  grep -q 'sm_90' <<<"$targets" || { echo "FAIL: no sm_90 PTX"; fail=1; }
  grep -aoE '^\.version [0-9.]+' "$f" | sort | uniq -c | sed 's/^/PTX ISA: /'
done
[[ $fail == 0 ]] && echo "check-build: OK" || { echo "check-build: FAILED"; exit 1; }
