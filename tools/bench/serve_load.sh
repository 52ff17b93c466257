#!/usr/bin/env bash
# Load test of `pixart serve` on this machine: starts the server on the tiny test pipeline
# (or MODEL=...), runs crates/pixart-cli/examples/serve_load.rs at a few concurrency levels
# against 127.0.0.1, then stops the server with SIGTERM. Results: docs/server.md.
#
#   tools/bench/serve_load.sh [REQUESTS] [STEPS] [SIZE] [MAX_QUEUE]
#   (MODEL=builtin for the built-in model; ROUTES="openai jobs a1111" by default: each at
#   1, 4 and 16 clients)
set -euo pipefail
cd "$(dirname "$0")/../.."
REQUESTS=${1:-48}
STEPS=${2:-8}
SIZE=${3:-256x256}
MAX_QUEUE=${4:-8}
MODEL=${MODEL:-fixtures/golden/pipeline}
TARGET=${CARGO_TARGET_DIR:-target}
# One build for both (the load client is an example of pixart-cli, using pixart_server::client).
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p pixart-cli --bins --example serve_load
PIXART=${PIXART:-$TARGET/release/pixart}
LOAD=${LOAD:-$TARGET/release/examples/serve_load}
LOG=$(mktemp)
"$PIXART" serve --model "$MODEL" --port 0 --max-queue "$MAX_QUEUE" 2>"$LOG" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 1 600); do
    ADDR=$(sed -n 's/^listening on http:\/\///p' "$LOG" | head -1)
    [ -n "$ADDR" ] && break
    sleep 0.1
done
[ -n "${ADDR:-}" ] || { cat "$LOG"; exit 1; }
echo "server $ADDR, model $MODEL, max queue $MAX_QUEUE; $(nproc) CPUs"
for ROUTE in ${ROUTES:-openai jobs a1111}; do
    for C in 1 4 16; do
        "$LOAD" --addr "$ADDR" --requests "$REQUESTS" --concurrency "$C" \
            --steps "$STEPS" --size "$SIZE" --route "$ROUTE"
    done
done
curl -s "http://$ADDR/metrics" 2>/dev/null | grep -E '^pixart_(jobs_total|jobs_rejected|step_seconds_mean|jobs_kept)' || true
kill -TERM $SERVER
wait $SERVER
tail -1 "$LOG"
