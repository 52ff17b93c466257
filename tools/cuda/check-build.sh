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
# Sonames the GPU machine provides; any other CUDA library in NEEDED is an error.
allowed='libcuda.so.1 libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13'
check() { # file, sonames it must need
  local f=$1; shift
  echo
  echo "== checking $f"
  [[ -x "$f" ]] || { echo "FAIL: missing"; fail=1; return; }
  local needed so
  needed=$(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
  echo "NEEDED: $(echo $needed)"
  for so in "$@"; do
    grep -qx "$so" <<<"$needed" || { echo "FAIL: NEEDED $so missing"; fail=1; }
  done
  for so in $(grep -E '^lib(cu|nv)' <<<"$needed" || true); do
    [[ " $allowed " == *" $so "* ]] || { echo "FAIL: unexpected CUDA library $so"; fail=1; }
  done
  if readelf -d "$f" | grep -qE 'RPATH|RUNPATH'; then echo "FAIL: has RPATH/RUNPATH"; fail=1; fi
}
# `pixart` is still a placeholder main that touches no candle code, so the linker drops the CUDA
# libraries (--as-needed); once it runs models it needs the same set as cuda_smoke.
check "$target/release/pixart"
smoke="$target/release/examples/cuda_smoke"
check "$smoke" libcuda.so.1 libcudart.so.13 libcublas.so.13 libcurand.so.10
# candle-kernels' PTX is embedded as text; it must target sm_90 (CUDA_COMPUTE_CAP=90).
if [[ -f "$smoke" ]]; then
  targets=$(grep -aoE '^\.target sm_[0-9]+a?' "$smoke" | sort | uniq -c || true)
  echo "PTX targets: $(echo ${targets:-none})"
  echo "PTX ISA: $(grep -aoE '^\.version [0-9.]+' "$smoke" | sort | uniq -c | xargs)"
  grep -q 'sm_90' <<<"$targets" || { echo "FAIL: no sm_90 PTX"; fail=1; }
fi
if [[ $fail == 0 ]]; then echo "check-build: OK"; else echo "check-build: FAILED"; exit 1; fi
