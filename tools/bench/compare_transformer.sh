#!/usr/bin/env bash
# Runs `pixart bench transformer` and the same forward in PyTorch/diffusers (tools/bench/transformer.py)
# alternately on this machine, same sizes, dtype and thread count, and prints both and their ratio,
# by wall time and by CPU time of all threads (with RAYON_NUM_THREADS=1 the CPU time is the work
# done even on a machine busy with other jobs; with more threads it includes spin-waiting).
# Usage: tools/bench/compare_transformer.sh [--sizes "256 512"] [--dtype f32] [--iters 3] [--rounds 1]
# Needs: cargo build --release -p pixart-cli (or PIXART_BIN), and the reference venv (PIXART_REF_PYTHON or tools/golden/setup.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
sizes="256 512"; dtype=f32; iters=3; rounds=1
while [ $# -gt 0 ]; do
  case "$1" in
    --sizes) sizes="$2"; shift 2;;
    --dtype) dtype="$2"; shift 2;;
    --iters) iters="$2"; shift 2;;
    --rounds) rounds="$2"; shift 2;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
py="${PIXART_REF_PYTHON:-$root/../pixart-ref-venv/bin/python}"
[ -x "$py" ] || { echo "no reference python at $py (set PIXART_REF_PYTHON or run tools/golden/setup.sh)" >&2; exit 2; }
# PIXART_BIN: the binary to time (default: the release build in CARGO_TARGET_DIR or target/).
bin="${PIXART_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/pixart}"
[ -x "$bin" ] || (cd "$root" && cargo build --release -q -p pixart-cli)
threads="${RAYON_NUM_THREADS:-$(nproc)}"
export RAYON_NUM_THREADS="$threads"
printf '%-6s %-5s %-5s %12s %12s %8s %12s %12s %10s %10s %9s\n' size dtype round rust_s torch_s ratio rust_rss_GiB torch_rss_GiB rust_cpu_s torch_cpu_s cpu_ratio
for size in $sizes; do
  for r in $(seq 1 "$rounds"); do
    rs=$("$bin" bench transformer --size "$size" --dtype "$dtype" --iters "$iters" | tail -n 1)
    ps=$("$py" "$root/tools/bench/transformer.py" --size "$size" --dtype "$dtype" --iters "$iters" --threads "$threads" | tail -n 1)
    "$py" - "$rs" "$ps" "$size" "$dtype" "$r" <<'PY'
import json, sys
r, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
rc, pc = r.get('cpu_seconds_per_forward'), p.get('cpu_seconds_per_forward')
cpu = f"{rc:10.3f} {pc:10.3f} {rc/pc:9.2f}" if rc and pc else f"{'-':>10} {'-':>10} {'-':>9}"
print(f"{sys.argv[3]:<6} {sys.argv[4]:<5} {sys.argv[5]:<5} {r['seconds_per_forward']:12.3f} {p['seconds_per_forward']:12.3f} "
      f"{r['seconds_per_forward']/p['seconds_per_forward']:8.2f} {r['peak_rss_bytes']/2**30:12.2f} {p['peak_rss_bytes']/2**30:12.2f} {cpu}")
PY
  done
done
