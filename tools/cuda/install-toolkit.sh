#!/usr/bin/env bash
# Install a CUDA 13.0 toolkit (nvcc + headers + the libraries candle links) from
# PyPI wheels into a prefix outside the repository, for building
# `cargo build --release --features cuda` on a machine with no GPU and no system CUDA.
#
#   tools/cuda/install-toolkit.sh            # prefix: $PIXART_CUDA_PREFIX or ~/.cache/pixart-cuda13
#   eval "$(tools/cuda/install-toolkit.sh --env)"   # print only `export CUDA_HOME=...`
#
# The toolkit is pinned to 13.0: the GPU box's driver (580.x) is a CUDA 13.0 driver and cannot
# JIT PTX produced by a newer nvcc; cudarc 0.19 supports up to 13.4 only.
# libcuda.so (the driver) is in no wheel: tools/cuda/build.sh links against a stub
# (tools/cuda/libcuda-stub.c) and the real driver is loaded at run time. See docs/cuda.md.
set -euo pipefail

PREFIX="${PIXART_CUDA_PREFIX:-$HOME/.cache/pixart-cuda13}"
PYTHON="${PYTHON:-python3}"
ENV_ONLY=0
[[ "${1:-}" == "--env" ]] && ENV_ONLY=1

# Pinned wheel versions (all CUDA 13.0.x). The cu13 wheels install into site-packages/nvidia/cu13.
WHEELS=(
  "nvidia-cuda-nvcc==13.0.88"      # nvcc, ptxas, fatbinary, nvlink, cudafe++
  "nvidia-nvvm==13.0.88"           # cicc, libnvvm
  "nvidia-cuda-crt==13.0.88"       # crt/host_config.h etc. (split out of nvcc in 13.x)
  "nvidia-cuda-runtime==13.0.96"   # cuda_runtime.h, libcudart.so.13
  "nvidia-cuda-cccl==13.0.85"      # cub / thrust / libcu++ headers
  "nvidia-cublas==13.1.0.3"        # libcublas.so.13, libcublasLt.so.13 (CUDA 13.0 U1 release)
  "nvidia-curand==10.4.0.35"       # libcurand.so.10 (CUDA 13.0 release)
  "nvidia-cuda-nvrtc==13.0.88"     # libnvrtc.so.13
)

log() { [[ $ENV_ONLY == 1 ]] && echo "$*" >&2 || echo "$*"; }

venv="$PREFIX/venv"
if [[ ! -x "$venv/bin/python" ]]; then
  log "creating venv $venv"
  "$PYTHON" -m venv "$venv"
fi
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
CUDA_HOME="$site/nvidia/cu13"

stamp="$PREFIX/.installed"
want=$(printf '%s\n' "${WHEELS[@]}")
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  log "installing pinned CUDA 13.0 wheels into $venv"
  "$venv/bin/python" -m pip install -q --no-deps --only-binary=:all: "${WHEELS[@]%%#*}" >&2
  echo "$want" >"$stamp"
fi

[[ -x "$CUDA_HOME/bin/nvcc" ]] || { echo "error: $CUDA_HOME/bin/nvcc missing" >&2; exit 1; }

# Unversioned .so symlinks for the linker (-lcudart -lcublas ...): wheels ship only libX.so.N.
# Also a lib64 link, which some build scripts look in.
for so in "$CUDA_HOME"/lib/lib*.so.*; do
  [[ -e "$so" ]] || continue
  base=$(basename "$so"); plain="${base%%.so.*}.so"
  [[ -e "$CUDA_HOME/lib/$plain" ]] || ln -s "$base" "$CUDA_HOME/lib/$plain"
done
[[ -e "$CUDA_HOME/lib64" ]] || ln -s lib "$CUDA_HOME/lib64"
# nvcc looks for cicc under $CUDA_HOME/nvvm/bin; the nvvm wheel installs it there already.
[[ -x "$CUDA_HOME/nvvm/bin/cicc" ]] || { echo "error: cicc missing under $CUDA_HOME/nvvm/bin" >&2; exit 1; }

if [[ $ENV_ONLY == 1 ]]; then
  echo "export CUDA_HOME='$CUDA_HOME'"
else
  "$CUDA_HOME/bin/nvcc" --version | tail -2
  echo
  echo "CUDA_HOME=$CUDA_HOME"
fi
