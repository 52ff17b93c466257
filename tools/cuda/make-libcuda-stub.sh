#!/usr/bin/env bash
# Build the link-time stub libcuda.so (see libcuda-stub.c) into $CUDA_HOME/lib/stubs, where
# cudarc's build script looks for it (the same place a full CUDA toolkit keeps its own stub).
#   tools/cuda/make-libcuda-stub.sh CUDA_HOME [CUDARC_SRC_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cuda_home=${1:?usage: make-libcuda-stub.sh CUDA_HOME [CUDARC_SRC_DIR]}
cudarc=${2:-}
if [[ -z "$cudarc" ]]; then
  # The cudarc source cargo resolved for this workspace (cargo fetch has been run).
  manifest=$(cd "$repo" && cargo metadata --format-version 1 --features pixart-cli/cuda 2>/dev/null |
    python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc"))')
  cudarc=$(dirname "$manifest")
fi
bindings="$cudarc/src/driver/sys/mod.rs"
[[ -f "$bindings" ]] || { echo "error: $bindings not found" >&2; exit 1; }

out="$cuda_home/lib/stubs"
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Names declared in the `extern "C" { fn cuXxx(...); }` blocks (all CUDA versions: a superset).
grep -oP '^\s+fn \Kcu\w+(?=\()' "$bindings" | sort -u | sed 's/.*/STUB(&)/' >"$work/libcuda-symbols.inc"
n=$(wc -l <"$work/libcuda-symbols.inc")
cp "$here/libcuda-stub.c" "$work/"
${CC:-cc} -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$out/libcuda.so" "$work/libcuda-stub.c" -I "$work"
echo "stub libcuda.so ($n symbols, SONAME libcuda.so.1) -> $out/libcuda.so"
