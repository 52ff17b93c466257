#!/usr/bin/env bash
# Build the CUDA (H100/H200, sm_90) `pixart` binary on a machine with no GPU. See docs/cuda.md.
#
#   tools/cuda/build.sh              # cargo build --release --features cuda (+ the examples, among
#                                    # them cuda_smoke and cuda_kernels_check for the GPU machine)
#   tools/cuda/build.sh --tests      # ... and cargo test --release --features cuda --no-run
#
# Environment: PIXART_CUDA_PREFIX (toolkit prefix, see install-toolkit.sh), CARGO_TARGET_DIR
# (default: <repo>/target/cuda, kept apart from the CPU build), CUDA_COMPUTE_CAP (default 90),
# PIXART_CUDA_DIST (default: <repo>/target/cuda-dist): where stripped copies of `pixart`,
# `cuda_smoke` and `cuda_kernels_check` are put, ready to carry to the GPU machine.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"

TESTS=0
for a in "$@"; do
  case "$a" in
    --tests) TESTS=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done

eval "$("$here/install-toolkit.sh" --env)"
export CUDA_HOME
export CUDA_PATH="$CUDA_HOME"
export PATH="$CUDA_HOME/bin:$PATH"
export NVCC="$CUDA_HOME/bin/nvcc"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
# cudarc reads "<major>0<minor>0"; this also stops it from parsing `nvcc --version`.
export CUDARC_CUDA_VERSION=13000
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target/cuda}"
# cudaforge runs nvcc on half the cores by default; use them all (not a rebuild trigger).
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"

cargo fetch --locked >/dev/null
"$here/make-libcuda-stub.sh" "$CUDA_HOME"

echo "CUDA_HOME=$CUDA_HOME"
echo "CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP CUDARC_CUDA_VERSION=$CUDARC_CUDA_VERSION CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
start=$(date +%s)
cargo build --locked --release --features cuda
# The example and the tests are built with the same package selection and features as the binary
# (the whole workspace, all `cuda` features). Building `-p pixart-core` alone would unify
# features differently (syn without "full"), rebuild the proc macros, and with them rerun
# candle-kernels' nvcc build (~15 min here).
feats=pixart-cli/cuda,pixart-model/cuda,pixart-kernels/cuda,pixart-core/cuda
cargo build --locked --release --workspace --features "$feats" --examples
if [[ $TESTS == 1 ]]; then
  cargo test --locked --release --workspace --features "$feats" --no-run
fi
echo "build time: $(( $(date +%s) - start )) s"

dist="${PIXART_CUDA_DIST:-$repo/target/cuda-dist}"
mkdir -p "$dist"
strip -o "$dist/pixart" "$CARGO_TARGET_DIR/release/pixart"
strip -o "$dist/cuda_smoke" "$CARGO_TARGET_DIR/release/examples/cuda_smoke"
strip -o "$dist/cuda_kernels_check" "$CARGO_TARGET_DIR/release/examples/cuda_kernels_check"
for f in pixart cuda_smoke cuda_kernels_check; do echo "stripped copy: $(du -h "$dist/$f" | cut -f1) $dist/$f"; done

bin="$CARGO_TARGET_DIR/release/pixart"
smoke="$CARGO_TARGET_DIR/release/examples/cuda_smoke"
for f in "$bin" "$smoke"; do
  echo
  echo "== $f ($(du -h "$f" | cut -f1), $(stat -c %s "$f") bytes)"
  echo "-- NEEDED:"
  readelf -d "$f" | grep NEEDED | sed 's/.*\[\(.*\)\]/   \1/'
  echo "-- ldd (here, LD_LIBRARY_PATH=\$CUDA_HOME/lib; libcuda.so.1 is the GPU driver's, absent here):"
  LD_LIBRARY_PATH="$CUDA_HOME/lib" ldd "$f" | sed 's/^/  /'
done
